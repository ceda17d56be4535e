"""The data set both demo services serve, loaded from one JSON file and validated."""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

# Ids travel as proto int32 and must be positive. Strict: JSON true or "101" is not an id.
UserId = Annotated[int, Field(gt=0, le=2**31 - 1, strict=True)]
# JSON object keys are always strings, so the keys of "recommendations" are parsed into ints.
UserIdKey = Annotated[int, Field(gt=0, le=2**31 - 1)]
Text = Annotated[str, Field(min_length=1)]

REFERENCE_DATA: Traversable = resources.files("services").joinpath("reference_data.json")


class DataError(Exception):
    """A data file is missing, unreadable, not JSON, or does not fit the schema.

    The message names the file and what is wrong with it.
    """


class User(BaseModel):
    """One shopper of the user directory."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: UserId
    name: Text
    segment: Text


class DataSet(BaseModel):
    """Users (unique ids) and, by user id, product recommendations (most relevant first)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    users: list[User]
    recommendations: dict[UserIdKey, list[Text]]

    @field_validator("users")
    @classmethod
    def _unique_ids(cls, users: list[User]) -> list[User]:
        seen: set[int] = set()
        for user in users:
            if user.user_id in seen:
                raise PydanticCustomError(
                    "duplicate_user_id", "user_id {user_id} appears more than once", {"user_id": user.user_id}
                )
            seen.add(user.user_id)
        return users


def load(path: Traversable = REFERENCE_DATA) -> DataSet:
    """Read and validate the data set in ``path`` (the shipped reference data by default).

    Raises:
        DataError: ``data file PATH: PROBLEM``, e.g. ``users.2.user_id: Input should be greater than 0``.
    """
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"data file {path}: cannot read it: {error.strerror or error}") from error
    try:
        return DataSet.model_validate_json(raw)
    except ValidationError as error:
        raise DataError(f"data file {path}: {_describe(error)}") from error


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors(include_url=False):
        where = ".".join(str(part) for part in item["loc"])
        problems.append(f"{where}: {item['msg']}" if where else item["msg"])
    return "; ".join(problems)
