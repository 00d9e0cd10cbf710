"""Users, passwords (argon2), browser sessions and API tokens (stored as sha256 of a random secret)."""

from __future__ import annotations

import hashlib
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.orm import Session

from app.auth import repository
from app.core.db import prepare_to_write
from app.core.errors import Conflict, Forbidden, Invalid, NotAuthenticated, NotFound, RateLimited
from app.models import ApiToken, User, UserSession, utcnow
from app.models.user import ROLES

_hasher = PasswordHasher()
# Verifying against this keeps the time of "no such user" equal to "wrong password".
_DUMMY_HASH = _hasher.hash("errorbook-dummy-password")

TOKEN_USE_RESOLUTION = timedelta(minutes=5)


def _has_control_characters(text: str) -> bool:
    return any(unicodedata.category(character) == "Cc" for character in text)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def role_at_least(user: User, role: str) -> bool:
    return ROLES.index(user.role) >= ROLES.index(role)


def create_user(session: Session, *, name: str, role: str, password: str | None = None) -> User:
    name = name.strip()
    if not name or len(name) > 100:
        raise Invalid("a user name needs 1 to 100 characters")
    if _has_control_characters(name):  # NUL and the like (Postgres refuses NUL in text outright)
        raise Invalid("a user name cannot contain control characters")
    if role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}")
    if repository.user_by_name(session, name) is not None:
        raise Conflict(f"a user named {name!r} already exists")
    user = User(name=name, role=role, password_hash=_hasher.hash(password) if password else None)
    repository.add(session, user)
    return user


def set_password(session: Session, *, user: User, password: str) -> None:
    if len(password) < 8:
        raise Invalid("a password needs at least 8 characters")
    user.password_hash = _hasher.hash(password)
    repository.delete_sessions_of(session, user.id)
    session.flush()


def authenticate(session: Session, *, name: str, password: str) -> User:
    user = repository.user_by_name(session, name.strip())
    stored = user.password_hash if user is not None and user.is_active else None
    try:
        _hasher.verify(stored or _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        stored = None
    if user is None or stored is None:
        raise NotAuthenticated("wrong user name or password")
    return user


@dataclass(frozen=True)
class NewSession:
    token: str
    csrf_token: str


def start_session(session: Session, *, user: User, days: int) -> NewSession:
    """A fresh session id on every login (no session fixation)."""
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    repository.add(
        session,
        UserSession(
            user_id=user.id,
            token_hash=_digest(token),
            csrf_token=csrf,
            expires_at=utcnow() + timedelta(days=days),
        ),
    )
    return NewSession(token=token, csrf_token=csrf)


def resolve_session(session: Session, *, token: str) -> tuple[User, UserSession] | None:
    row = repository.live_session(session, _digest(token), utcnow())
    if row is None:
        return None
    user = repository.user_by_id(session, row.user_id)
    if user is None or not user.is_active:
        return None
    return user, row


def end_session(session: Session, *, token: str) -> None:
    repository.delete_session(session, _digest(token))


def create_token(session: Session, *, user: User, name: str) -> tuple[ApiToken, str]:
    """Returns the row and the secret; the secret is shown once and only its hash is kept."""
    if _has_control_characters(name):
        raise Invalid("a token name cannot contain control characters")
    secret = "eb_" + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user.id, name=name[:100] or "token", prefix=secret[:10], token_hash=_digest(secret))
    repository.add(session, row)
    return row, secret


def resolve_token(session: Session, *, secret: str) -> User | None:
    """The token's user; records when the token was last used, at most once per TOKEN_USE_RESOLUTION (a write
    per API call would serialise every read on SQLite)."""
    row = repository.active_token(session, _digest(secret))
    if row is None:
        return None
    user_id, token_id, last_used, now = row.user_id, row.id, row.last_used_at, utcnow()
    if last_used is None or now - last_used >= TOKEN_USE_RESOLUTION:
        prepare_to_write(session)  # most API calls are GETs, which begin as reads
        repository.touch_token(session, token_id, now)
    user = repository.user_by_id(session, user_id)
    if user is None or not user.is_active:
        return None
    return user


def revoke_token(session: Session, *, actor: User, token_id: int) -> ApiToken:
    row = repository.token_by_id(session, token_id)
    if row is None:
        raise NotFound(f"token {token_id} does not exist")
    if row.user_id != actor.id and actor.role != "admin":
        raise Forbidden("only an admin can revoke another user's token")
    row.revoked_at = row.revoked_at or utcnow()
    session.flush()
    return row


def list_users(session: Session) -> list[User]:
    return repository.list_users(session)


def tokens_of(session: Session, *, user: User) -> list[ApiToken]:
    return repository.tokens_of(session, user.id)


def get_user_by_name(session: Session, *, name: str) -> User:
    user = repository.user_by_name(session, name)
    if user is None:
        raise NotFound(f"no user named {name!r}")
    return user


def ensure_initial_admin(session: Session) -> tuple[str, str] | None:
    """On first start with no users, create ``admin`` with a random password and return it to print once."""
    if repository.count_users(session):
        return None
    password = secrets.token_urlsafe(12)
    create_user(session, name="admin", role="admin", password=password)
    return "admin", password


LOGIN_WINDOW = timedelta(minutes=1)


def _throttle_key(client: str, name: str) -> str:
    # Hashed: the table need not keep who tried which account from where.
    return _digest(f"{client}:{name.strip().lower()}")


def check_login_allowed(session: Session, *, client: str, name: str, per_minute: int) -> None:
    """At most ``per_minute`` failed logins per minute for one (client, user name), counted in the database so
    that every web process sees the same count; over it, even the right password is refused until one expires."""
    now = utcnow()
    count, oldest = repository.recent_failures(session, _throttle_key(client, name), now - LOGIN_WINDOW)
    if count >= per_minute and oldest is not None:
        wait = int((oldest + LOGIN_WINDOW - now).total_seconds()) + 1
        raise RateLimited(f"too many failed logins; try again in {wait} s")


def record_login_failure(session: Session, *, client: str, name: str) -> None:
    now = utcnow()
    repository.forget_failures_before(session, now - LOGIN_WINDOW)  # keeps the table as small as one minute
    repository.add_failure(session, _throttle_key(client, name), now)
