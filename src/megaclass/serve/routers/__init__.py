"""One router per resource: classes, recognition, gallery, admin, health."""
