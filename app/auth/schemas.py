from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    role: str
    is_active: bool


class UserIn(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    role: str = "viewer"
    password: str | None = Field(default=None, min_length=8, max_length=200)


class UserPatch(BaseModel):
    role: str | None = None
    active: bool | None = None


class PasswordChange(BaseModel):
    current_password: str = Field(max_length=200)
    new_password: str = Field(min_length=8, max_length=200)


class TokenIn(BaseModel):
    name: str = Field(default="api", max_length=100)


class TokenCreated(BaseModel):
    id: int
    name: str
    token: str


class TokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
