"""Pydantic models of every request and response body (they make the OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

Label = Field(min_length=1, max_length=256, description="Class label.")


def _absent(value: object) -> bool:
    """``exclude_if`` of optional extras: left out of the answer when None, not sent as null."""
    return value is None


class ErrorOut(BaseModel):
    error: str = Field(description="Error type, e.g. DimensionMismatchError.")
    message: str
    detail: list[dict[str, Any]] | None = None


#: answers every route that needs a key can give: 401 (no or bad key), 403 (role too low),
#: 429 (the client's refused requests are over their budget, see ratelimit.py)
REFUSALS: dict = {401: {"model": ErrorOut}, 403: {"model": ErrorOut},
                  429: {"model": ErrorOut, "description": "too many refused requests from this client"}}


class MatchOut(BaseModel):
    label: str
    score: float
    thumbnail: str | None = Field(None, exclude_if=_absent, description=(
        "With ?thumbnails=true: the class's first retained thumbnail (a JPEG data URL), if any."))


class DecisionOut(BaseModel):
    label: str | None = Field(description="Best class, or null when its score is below the threshold.")
    known: bool
    score: float | None = Field(description="Best class's cosine score; null for an empty gallery.")
    candidates: list[MatchOut]
    statistic: float | None = Field(None, exclude_if=_absent, description=(
        "Under the decision rule cohort:N, the value compared with the threshold (best score "
        "minus the mean of the next N classes' scores); absent under the rule 'score'."))


class IdentifyOut(BaseModel):
    threshold: float | None
    results: list[DecisionOut]


class VerifyOut(BaseModel):
    label: str
    accepted: bool
    score: float
    threshold: float | None
    statistic: float | None = Field(None, exclude_if=_absent, description=(
        "Under the decision rule cohort:N, the claimed class's score minus the mean of the "
        "probe's next N classes' scores; absent under the rule 'score'."))
    thumbnail: str | None = Field(None, exclude_if=_absent,
                                  description="With ?thumbnails=true, as in identify.")


class _Vectors(BaseModel):
    vectors: list[list[float]] = Field(min_length=1, description="Embeddings, one row each.")

    @model_validator(mode="after")
    def _rectangular(self):
        widths = {len(v) for v in self.vectors}
        if len(widths) != 1 or 0 in widths:
            raise ValueError(f"vectors must be non-empty rows of one length; got lengths {sorted(widths)}")
        return self


class EnrollVectorsIn(_Vectors):
    label: str = Label
    meta: dict[str, Any] | None = None
    replace: bool = False


class TemplatesIn(_Vectors):
    pass


class IdentifyVectorsIn(_Vectors):
    k: int = Field(5, ge=1, description="Candidates per query.")


class EnrollOut(BaseModel):
    label: str
    samples: int = Field(description="Images or vectors used.")
    gallery_classes: int


class EraseOut(BaseModel):
    label: str
    templates_removed: int
    gallery_classes: int


class ClassOut(BaseModel):
    label: str
    templates: int
    samples: int | None = Field(None, description="Samples averaged into the template "
                                                  "(templates mode \"mean\"); null if unknown.")
    meta: dict[str, Any] = Field(description="The meta given at enrollment.")
    thumbnails: list[str] | None = Field(None, exclude_if=_absent,
                                         description="With ?thumbnails=true: JPEG data URLs.")


class ClassItem(BaseModel):
    label: str
    templates: int
    samples: int | None
    thumbnails: int = Field(description="Thumbnails retained for the class.")


class ClassListOut(BaseModel):
    total: int = Field(description="Classes matching (all of them without `q`).")
    labels: list[str]
    items: list[ClassItem] | None = Field(None, exclude_if=_absent,
                                         description="With ?detail=true: counts per listed class.")


class CalibrationOut(BaseModel):
    threshold: float
    target_fpir: float
    achieved_fpir: float
    n_non_mated: int
    fpir_ci95: list[float]
    decision: str | None = Field(None, exclude_if=_absent, description=(
        "The decision rule the threshold applies to (score or cohort:N); absent for ensembles."))
    warning: str | None = Field(None, description="Set when fewer non-mated searches than "
                                                  "10/FPIR were allowed (allow_few).")


class PreviewOut(BaseModel):
    images: list[str] = Field(description="What the model sees of each upload: PNG data URLs of its "
                                          "normalised input (before the model's own mean/std).")
    size: int
    channels: int


class WhoAmIOut(BaseModel):
    id: str
    name: str
    role: str


class KeyIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    role: Literal["reader", "enroller", "admin"]


class KeyOut(BaseModel):
    id: str
    name: str
    role: str
    created_at: str
    revoked_at: str | None
    active: bool


class KeyCreatedOut(BaseModel):
    key: KeyOut
    token: str = Field(description="The API key. Shown once: only its hash is stored.")


class AuditRow(BaseModel):
    id: int
    time: str
    key_id: str | None
    operation: str
    labels: list[str]
    decision: str
    status: int


class AuditOut(BaseModel):
    rows: list[AuditRow]
