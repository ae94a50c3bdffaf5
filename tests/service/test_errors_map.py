"""``service/errors.py``: every error has a status, and answers have the promised shape."""

from __future__ import annotations

import importlib
import logging
import pkgutil

import orjson
import pytest

import filekv.engine
from filekv.engine import errors as engine_errors
from filekv.service import auth as auth_module
from filekv.service import errors


def all_subclasses(root: type[BaseException]) -> set[type[BaseException]]:
    found: set[type[BaseException]] = set()
    pending = [root]
    while pending:
        cls = pending.pop()
        if cls not in found:
            found.add(cls)
            pending.extend(cls.__subclasses__())
    return found


def load_every_engine_module() -> None:
    # A subclass defined in any engine module only appears in __subclasses__ once imported.
    for module in pkgutil.iter_modules(filekv.engine.__path__, "filekv.engine."):
        importlib.import_module(module.name)


def test_errors_every_store_error_has_its_own_mapping() -> None:
    load_every_engine_module()
    missing = [cls for cls in all_subclasses(engine_errors.StoreError) if cls not in errors.ERRORS]
    assert missing == []


@pytest.mark.parametrize("root", [auth_module.AuthError, errors.ServiceError])
def test_errors_every_auth_and_service_error_has_its_own_mapping(
    root: type[BaseException],
) -> None:
    missing = [cls for cls in all_subclasses(root) if cls not in errors.ERRORS]
    assert missing == []


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (engine_errors.ValueTooLarge("v"), 413),
        (engine_errors.TransactionTooLarge("t"), 413),
        (engine_errors.RecoveryInterrupted("r"), 503),
        (engine_errors.VersionMismatch("k", 1, 2), 412),
        (engine_errors.TransactionActive("t"), 423),
        (engine_errors.TransactionClosed("t"), 409),
        (engine_errors.DiskFull("d"), 507),
        (engine_errors.StoreFailed("f"), 503),
        (engine_errors.StorageError("s"), 500),
        (engine_errors.CorruptStore("/secret/path.seg", 7, "bad crc"), 500),
        (engine_errors.StoreClosed("c"), 503),
        (engine_errors.StoreLocked("l"), 503),
        (auth_module.InvalidCredentials("x"), 401),
        (auth_module.RegistrationClosed("x"), 403),
        (auth_module.UsernameTaken("x"), 409),
        (auth_module.TooManyAttempts(2.5), 429),
        (errors.NotAuthenticated("x"), 401),
        (errors.KeyNotFound("x"), 404),
        (errors.PreconditionFailed("x"), 412),
        (errors.NoTransaction("x"), 409),
        (errors.TransactionExpired("x"), 409),
        (errors.TransactionEnded("x"), 409),
        (errors.TransactionBroken("x"), 409),
        (errors.Forbidden("x"), 403),
        (errors.BadRequest("x"), 400),
        (errors.Locked(0.2), 423),
        (errors.BodyTooLarge("x"), 413),
        (errors.UnsupportedMediaType("x"), 415),
        (errors.HeadersTooLarge("x"), 431),
        (errors.StoreUnavailable("x"), 503),
    ],
)
def test_errors_answer_has_status_and_string_detail(exc: Exception, status: int) -> None:
    answer = errors.error_response(exc)
    assert answer.status_code == status
    body = orjson.loads(answer.body)
    assert list(body) == ["detail"]
    assert isinstance(body["detail"], str) and body["detail"]


def test_errors_invalid_key_is_a_validation_error_of_the_path() -> None:
    # An empty or too long key is 422 like every other rejected input: FastAPI's list form.
    answer = errors.error_response(engine_errors.InvalidKey("the key is empty"))
    assert answer.status_code == 422
    assert orjson.loads(answer.body) == {
        "detail": [{"type": "key_invalid", "loc": ["path", "key"], "msg": "the key is empty"}]
    }


@pytest.mark.parametrize(
    ("exc", "header", "value"),
    [
        (errors.Locked(0.2), "retry-after", "1"),
        (errors.Locked(29.01), "retry-after", "30"),
        (auth_module.TooManyAttempts(2.5), "retry-after", "3"),
        (errors.NotAuthenticated("x"), "www-authenticate", "Bearer"),
        (auth_module.InvalidCredentials("x"), "www-authenticate", "Bearer"),
    ],
)
def test_errors_answer_headers(exc: Exception, header: str, value: str) -> None:
    assert errors.error_response(exc).headers[header] == value


def test_errors_internal_details_do_not_leak_paths() -> None:
    answer = errors.error_response(engine_errors.CorruptStore("/secret/path.seg", 7, "bad crc"))
    assert b"/secret" not in answer.body


def test_errors_subclass_without_entry_uses_nearest_ancestor() -> None:
    class Special(engine_errors.DiskFull):
        pass

    assert errors.answer_for(Special("x")) is errors.ERRORS[engine_errors.DiskFull]
    assert errors.answer_for(ValueError("x")) is None


@pytest.mark.parametrize(
    "exc",
    [
        engine_errors.DiskFull("no space left on /data"),
        engine_errors.StoreFailed("fsync failed"),
        engine_errors.StoreClosed("closed"),
        errors.StoreUnavailable("not open"),
    ],
)
def test_errors_expected_5xx_log_one_warning_line_without_traceback(
    exc: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="filekv.service.errors"):
        errors.error_response(exc)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.exc_info is None and "\n" not in record.getMessage()
    assert type(exc).__name__ in record.getMessage()


@pytest.mark.parametrize(
    "exc",
    [
        engine_errors.VersionMismatch("k", 1, 2),
        engine_errors.InvalidKey("k"),
        errors.Locked(1),
        errors.KeyNotFound("x"),
    ],
)
def test_errors_4xx_log_nothing(exc: Exception, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="filekv.service.errors"):
        errors.error_response(exc)
    assert caplog.records == []


@pytest.mark.parametrize(
    "exc",
    [
        engine_errors.CorruptStore("/data/0000000001.seg", 7, "bad crc"),
        engine_errors.StorageError("EIO"),
        ValueError("a bug"),
    ],
)
def test_errors_real_500s_log_their_traceback(
    exc: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    try:
        raise exc
    except Exception as raised:
        with caplog.at_level(logging.DEBUG, logger="filekv.service.errors"):
            assert errors.error_response(raised).status_code == 500
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
