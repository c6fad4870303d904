from unittest.mock import ANY

import pytest

from toolkit.consumer.outcomes import Done, ErrorPolicy, Pause, RetryAfter, RetryPolicy, Stop, ToDeadLetter, decide
from toolkit.errors import BrokerUnavailable, MessageError, RegistryUnavailable, RetryableError

POLICY = RetryPolicy(max_attempts=3, initial_s=0.5, max_s=3.0)


@pytest.mark.parametrize("result", [True, None])
def test_done(result):
    assert decide(result, 1, POLICY) == Done()


@pytest.mark.parametrize("result", [False, RetryableError("later")])
def test_retry_with_backoff_then_dead_letter(result):
    assert decide(result, 1, POLICY) == RetryAfter(0.5, decide(result, 1, POLICY).reason)
    assert decide(result, 2, POLICY).delay_s == 1.0
    last = decide(result, 3, POLICY)
    assert isinstance(last, ToDeadLetter) and last.stage == "retries_exhausted"


def test_backoff_capped():
    assert RetryPolicy(max_attempts=10, initial_s=1, max_s=5).delay(9) == 5


def test_other_exception_dead_letters_at_once():
    out = decide(KeyError("x"), 1, POLICY)
    assert isinstance(out, ToDeadLetter) and out.stage == "handler" and isinstance(out.error, KeyError)


def test_message_error_dead_letters_with_its_stage():
    out = decide(MessageError("validation", "bad", details=[{"path": "/body", "message": "m"}]), 1, POLICY)
    assert out.stage == "validation" and out.details == [{"path": "/body", "message": "m"}]


@pytest.mark.parametrize("exc", [RegistryUnavailable("down"), BrokerUnavailable("down")])
def test_outages_pause_never_dead_letter(exc):
    for attempt in (1, 3, 50):
        assert isinstance(decide(exc, attempt, POLICY), Pause)
        assert isinstance(decide(exc, attempt, POLICY, ErrorPolicy.STOP), Pause)


def test_stop_policy():
    out = decide(ValueError("boom"), 1, POLICY, ErrorPolicy.STOP)
    assert isinstance(out, Stop) and out.dead_letter.stage == "handler"
    assert decide(False, 1, POLICY, ErrorPolicy.STOP) == decide(False, 1, POLICY)
    assert isinstance(decide(False, 3, POLICY, ErrorPolicy.STOP), Stop)


def test_unexpected_return_value_is_handler_fault():
    assert decide("yes", 1, POLICY).stage == "handler"


def test_continue_alias():
    assert ErrorPolicy.CONTINUE is ErrorPolicy.DEAD_LETTER


class StrFails(Exception):
    def __str__(self):
        raise RuntimeError("str() raises")


class ReprFails:
    def __repr__(self):
        raise RuntimeError("repr() raises")


def test_results_whose_str_or_repr_fails_still_get_an_outcome():
    retry = RetryPolicy(max_attempts=2)
    assert decide(StrFails(), 1, retry) == ToDeadLetter("handler", "StrFails: <StrFails str() failed>", ANY)

    class RetryStrFails(RetryableError):
        def __str__(self):
            raise RuntimeError("str() raises")

    assert decide(RetryStrFails(), 1, retry).reason == "RetryStrFails: <RetryStrFails str() failed>"
    assert decide(ReprFails(), 1, retry).reason.startswith("handler returned ReprFails <ReprFails repr() failed>")
