from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from app.models import ApiToken, LoginFailure, User, UserSession


def user_by_name(session: Session, name: str) -> User | None:
    return session.scalar(select(User).where(User.name == name))


def user_by_id(session: Session, user_id: int) -> User | None:
    return session.get(User, user_id)


def count_users(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(User)) or 0


def count_active_admins(session: Session) -> int:
    query = select(func.count()).select_from(User).where(User.role == "admin", User.is_active.is_(True))
    return session.scalar(query) or 0


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.name)))


def add(session: Session, row: User | ApiToken | UserSession) -> None:
    session.add(row)
    session.flush()


def active_token(session: Session, token_hash: str) -> ApiToken | None:
    return session.scalar(select(ApiToken).where(ApiToken.token_hash == token_hash, ApiToken.revoked_at.is_(None)))


def token_by_id(session: Session, token_id: int) -> ApiToken | None:
    return session.get(ApiToken, token_id)


def tokens_of(session: Session, user_id: int) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.id)))


def live_session(session: Session, token_hash: str, now: datetime) -> UserSession | None:
    return session.scalar(select(UserSession).where(UserSession.token_hash == token_hash, UserSession.expires_at > now))


def delete_session(session: Session, token_hash: str) -> None:
    session.execute(delete(UserSession).where(UserSession.token_hash == token_hash))


def delete_sessions_of(session: Session, user_id: int) -> None:
    session.execute(delete(UserSession).where(UserSession.user_id == user_id))


def touch_token(session: Session, token_id: int, now: datetime) -> None:
    session.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))


def recent_failures(session: Session, key_hash: str, since: datetime) -> tuple[int, datetime | None, datetime | None]:
    """(how many, the oldest, the newest) failed logins of this key since ``since``."""
    count, oldest, newest = session.execute(
        select(func.count(), func.min(LoginFailure.failed_at), func.max(LoginFailure.failed_at)).where(
            LoginFailure.key_hash == key_hash, LoginFailure.failed_at >= since
        )
    ).one()
    return int(count), oldest, newest


def add_failure(session: Session, key_hash: str, now: datetime) -> None:
    session.add(LoginFailure(key_hash=key_hash, failed_at=now))
    session.flush()


def forget_failures_before(session: Session, cutoff: datetime) -> None:
    session.execute(delete(LoginFailure).where(LoginFailure.failed_at < cutoff))
