"""What the actions on a selection of images offer (templates/_selection.html): the dataset's open review campaigns
and its categories. The map page and the dataset grid show the same form."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.auth.service import role_at_least
from app.error_analysis import service as error_analysis
from app.models import Review, Tag, User
from app.review import campaigns


@dataclass(frozen=True)
class SelectionActions:
    campaigns: list[Review]  # open ones, newest first
    tags: list[Tag]


def selection_actions(session: Session, *, dataset_id: int, user: User) -> SelectionActions | None:
    """None for a viewer, who gets no actions (and whose look at a page writes nothing: a dataset's first look at
    its categories creates the default one)."""
    if not role_at_least(user, "reviewer"):
        return None
    return SelectionActions(
        campaigns=campaigns.open_campaigns(session, dataset_id=dataset_id),
        tags=list(error_analysis.dataset_tags(session, dataset_id=dataset_id)),
    )
