"""The error tables (robot_server/errors.py) answer every error the driver can raise with
the status the API documents: a motion refused before anything moved is 422; not homed
and the board's failures are 409."""
from __future__ import annotations

from robot_server import driver
from robot_server.errors import HTTP_STATUS, ApiError, as_api_error


def _subclasses(cls: type) -> list[type]:
    return [cls] + [sub for direct in cls.__subclasses__() for sub in _subclasses(direct)]


def test_every_driver_error_has_its_status():
    for cls in _subclasses(driver.DriverError):
        expected = 422 if issubclass(cls, driver.MotionError) and cls is not driver.NotHomedError else 409
        assert HTTP_STATUS.get(cls.code) == expected, cls.__name__


def test_driver_error_answered_with_its_code_and_text():
    error = as_api_error(driver.SoftLimitError("X 500 is beyond its travel"))
    assert (error.status, error.body()) == (422, {"error": "soft-limit", "message": "X 500 is beyond its travel"})


def test_aiohttp_refusals_have_their_status_name():
    assert ApiError("method-not-allowed", "").status == 405
    assert ApiError("not-found", "").status == 404
