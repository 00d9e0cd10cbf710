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


MIN_PASSWORD = 8
# Characters that do not show (zero-width spaces and joiners, direction marks, line separators): a name with one
# would look like another user's.
_INVISIBLE = frozenset({"Cc", "Cf", "Co", "Cs", "Zl", "Zp"})


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise Invalid(f"a password needs at least {MIN_PASSWORD} characters")


def user_name(raw: str) -> str:
    """A user name as stored: NFKC-normalised (full-width and compatibility forms folded), trimmed, and
    refused when empty, too long, or carrying characters that do not show."""
    name = unicodedata.normalize("NFKC", raw).strip()
    if not name or len(name) > 100:
        raise Invalid("a user name needs 1 to 100 characters")
    if any(unicodedata.category(character) in _INVISIBLE for character in name):
        raise Invalid("a user name cannot contain control characters or invisible ones")
    return name


def _user_by_name(session: Session, name: str) -> User | None:
    """The user whose name matches, ignoring case and compatibility forms (a handful of rows: compared here,
    the same on SQLite and Postgres)."""
    exact = repository.user_by_name(session, name.strip())
    if exact is not None:
        return exact
    key = name_key(name)
    return next((user for user in repository.list_users(session) if name_key(user.name) == key), None)


def create_user(session: Session, *, name: str, role: str, password: str | None = None) -> User:
    name = user_name(name)
    if role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}")
    if password is not None:
        _check_password(password)  # one rule for the page, the API and the command line
    existing = _user_by_name(session, name)
    if existing is not None:
        raise Conflict(f"a user named {existing.name!r} already exists (names are compared ignoring case)")
    user = User(name=name, role=role, password_hash=_hasher.hash(password) if password else None)
    repository.add(session, user)
    return user


def set_password(session: Session, *, user: User, password: str) -> None:
    _check_password(password)
    user.password_hash = _hasher.hash(password)
    repository.delete_sessions_of(session, user.id)
    session.flush()


def change_own_password(session: Session, *, user: User, current_password: str, new_password: str) -> None:
    """Needs the current password (a borrowed session must not lock its owner out); ends every session of the
    user, so the caller starts a new one for the browser that asked."""
    try:
        _hasher.verify(user.password_hash or _DUMMY_HASH, current_password)
    except (VerificationError, InvalidHashError):
        raise Forbidden("the current password is wrong") from None
    set_password(session, user=user, password=new_password)


def update_user(
    session: Session, *, actor: User, user_id: int, role: str | None = None, active: bool | None = None
) -> User:
    """An admin changes a user's role or (de)activates them; a deactivated user's sessions end at once and their
    tokens stop resolving (they work again if the user is reactivated)."""
    user = repository.user_by_id(session, user_id)
    if user is None:
        raise NotFound(f"user {user_id} does not exist")
    if role is not None and role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}")
    loses_admin = user.role == "admin" and user.is_active and (active is False or role not in (None, "admin"))
    if loses_admin and user.id == actor.id:
        raise Conflict("you cannot deactivate yourself or drop your own admin role; another admin can")
    if loses_admin and repository.count_active_admins(session) <= 1:
        raise Conflict("at least one active admin must remain")
    if role is not None:
        user.role = role
    if active is not None:
        user.is_active = active
        if not active:
            repository.delete_sessions_of(session, user.id)
    session.flush()
    return user


def authenticate(session: Session, *, name: str, password: str) -> User:
    user = _user_by_name(session, name)
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


def credentials_valid(session: Session, *, bearer: str | None, session_token: str | None) -> bool:
    """Whether an API token or a session token names an active user: read-only, for the request gate that runs
    before any body is read (the route's own dependency then resolves the user, CSRF and role)."""
    if bearer is not None:
        token = repository.active_token(session, _digest(bearer))
        user = repository.user_by_id(session, token.user_id) if token is not None else None
        return user is not None and user.is_active
    return session_token is not None and resolve_session(session, token=session_token) is not None


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
    user = _user_by_name(session, name)
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
# Failures of one user name from anywhere are remembered this long (the per-name backoff's memory).
LOGIN_NAME_WINDOW = timedelta(minutes=15)


def name_key(name: str) -> str:
    """The form of a user name that look-alikes share (case, width, compatibility forms)."""
    return unicodedata.normalize("NFKC", name).strip().casefold()


def _throttle_key(client: str, name: str) -> str:
    # Hashed: the table need not keep who tried which account from where.
    return _digest(f"{client}:{name_key(name)}")


def _name_throttle_key(name: str) -> str:
    return _digest(f"name:{name_key(name)}")


@dataclass(frozen=True)
class LoginLimits:
    per_minute: int  # failures per (client, user name) per minute; then even the right password waits
    per_name: int  # failures of one user name from anywhere per LOGIN_NAME_WINDOW before each try waits
    max_delay_seconds: int


def check_login_allowed(
    session: Session, *, client: str, name: str, limits: LoginLimits, known_browser: bool = False
) -> None:
    """Refuse a login try while it is throttled, counted in the database so that every web process sees the
    same count. Per (client, user name): at most `per_minute` failures a minute. Per user name, from any
    address: past `per_name` failures, each try waits a delay that doubles with every further failure (up to
    `max_delay_seconds`), so rotating addresses buys nothing; a browser that logged in as this user before
    (`known_browser`) skips that delay, so a stranger's guessing never locks the account's owner out."""
    now = utcnow()
    count, oldest, _ = repository.recent_failures(session, _throttle_key(client, name), now - LOGIN_WINDOW)
    if count >= limits.per_minute and oldest is not None:
        wait = int((oldest + LOGIN_WINDOW - now).total_seconds()) + 1
        raise RateLimited(f"too many failed logins; try again in {wait} s")
    if known_browser:
        return
    count, _, newest = repository.recent_failures(session, _name_throttle_key(name), now - LOGIN_NAME_WINDOW)
    if count >= limits.per_name and newest is not None:
        delay = timedelta(seconds=min(2 ** min(count - limits.per_name, 30), limits.max_delay_seconds))
        if now < newest + delay:
            wait = int((newest + delay - now).total_seconds()) + 1
            raise RateLimited(f"too many failed logins for this user; try again in {wait} s")


def record_login_failure(session: Session, *, client: str, name: str) -> None:
    now = utcnow()
    repository.forget_failures_before(session, now - LOGIN_NAME_WINDOW)  # keeps the table small
    repository.add_failure(session, _throttle_key(client, name), now)
    repository.add_failure(session, _name_throttle_key(name), now)
