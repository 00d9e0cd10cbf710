"""ORM models; importing this package registers every table on ``Base.metadata``."""

from app.models.analysis import (
    ErrorAnnotation,
    ErrorAnnotationTag,
    ErrorSample,
    ErrorSampleItem,
    LabelProposal,
    Review,
    ReviewItem,
    Tag,
)
from app.models.base import Base, utcnow
from app.models.dataset import Dataset, Image, ImageStat, Label, LabelChange, LabelEvent, Upload, UploadEntry
from app.models.embedding import EmbeddingSet
from app.models.health import HealthScan, ImageIssue
from app.models.job import Job, JobExecution, JobShard
from app.models.pool import PoolScore, PoolScoring
from app.models.run import Prediction, Run
from app.models.split import Split, SplitAssignment
from app.models.user import ApiToken, LoginFailure, User, UserSession

__all__ = [
    "ApiToken",
    "Base",
    "Dataset",
    "EmbeddingSet",
    "ErrorAnnotation",
    "ErrorAnnotationTag",
    "ErrorSample",
    "ErrorSampleItem",
    "HealthScan",
    "Image",
    "ImageIssue",
    "ImageStat",
    "Job",
    "JobExecution",
    "JobShard",
    "Label",
    "LoginFailure",
    "LabelChange",
    "LabelEvent",
    "LabelProposal",
    "PoolScore",
    "PoolScoring",
    "Prediction",
    "Review",
    "ReviewItem",
    "Run",
    "Split",
    "SplitAssignment",
    "Tag",
    "Upload",
    "UploadEntry",
    "User",
    "UserSession",
    "utcnow",
]
