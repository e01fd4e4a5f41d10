"""megaclass: recognition among millions of classes that keep growing after training."""

__version__ = "0.1.0"
