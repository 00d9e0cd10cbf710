"""Who may touch an upload in the making."""

from __future__ import annotations

from app.core.errors import Forbidden
from app.models import Upload, User


def check_owner(upload: Upload, user: User | None) -> None:
    """An upload in the making is its creator's (an admin's too): nobody else adds to, finishes or drops it.
    `user` None is the operator's own command line."""
    if user is not None and upload.created_by_id != user.id and user.role != "admin":
        raise Forbidden(f"upload {upload.id} belongs to another user; start an upload of your own")
