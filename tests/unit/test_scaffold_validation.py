"""`epistle new`'s answers: every bad input is refused with its field and a fix (pure, no files)."""

from __future__ import annotations

import pytest

from toolkit.scaffold import Answers, ScaffoldError, check_answers, rules

VALID = {
    "project_name": "orders-consumer",
    "package_name": "orders_consumer",
    "topics": "orders,payments",
    "group_id": "orders-consumer",
}


def _problems(**changes: str) -> list[rules.Problem]:
    answers = {**VALID, **changes}
    return rules.check_answers(answers["project_name"], answers["package_name"], answers["topics"], answers["group_id"])


def test_valid_answers_have_no_problem() -> None:
    assert _problems() == []
    check_answers(Answers(**VALID))  # does not raise


@pytest.mark.parametrize(
    "name",
    ["", "   ", "-orders", "orders-", "orders consumer", "orders/consumer", "../up", ".hidden", "ördër", "x" * 101],
)
def test_invalid_project_names(name: str) -> None:
    [problem] = _problems(project_name=name)
    assert problem.field == "project_name"
    assert problem.fix


@pytest.mark.parametrize("name", ["orders-consumer", "orders_consumer", "Orders.Consumer2", "a", "1st-service"])
def test_valid_project_names(name: str) -> None:
    assert rules.check_project_name(name) == []


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        ("orders-consumer", "not a Python identifier"),
        ("1orders", "not a Python identifier"),
        ("orders consumer", "not a Python identifier"),
        ("ördër", "not a Python identifier"),
        ("class", "keyword"),
        ("import", "keyword"),
        ("Orders", "upper-case"),
        ("json", "shadows"),
        ("asyncio", "shadows"),
        ("toolkit", "shadows"),
        ("generated_models", "shadows"),
        ("tests", "shadows"),
    ],
)
def test_invalid_package_names(name: str, why: str) -> None:
    [problem] = _problems(package_name=name)
    assert problem.field == "package_name"
    assert why in problem.problem
    assert problem.fix


@pytest.mark.parametrize(
    ("topics", "why"),
    [
        ("", "no topic"),
        ("  ", "no topic"),
        ("orders,,payments", "empty"),
        ("orders,", "empty"),
        (".", "'.' and '..'"),
        ("..", "'.' and '..'"),
        ("o" * 250, "at most 249"),
        ("orders/eu", "'/'"),
        ("orders eu", "' '"),
        ("ordérs", "'é'"),
        ("orders:v1", "':'"),
        ("__consumer_offsets", "internal"),
        ("orders,orders", "listed twice"),
        ("orders.v1,orders_v1", "collides"),
        ("orders-v1,Orders.V1", "collides"),
    ],
)
def test_invalid_topics(topics: str, why: str) -> None:
    problems = _problems(topics=topics)
    assert problems, topics
    assert all(problem.field == "topics" for problem in problems)
    assert any(why in problem.problem for problem in problems), problems
    assert all(problem.fix for problem in problems)


@pytest.mark.parametrize(
    "topics",
    ["orders", "o" * 249, "a.b_c-D9", "orders, payments ,shipments", "1orders", "_private", "orders.v1,orders.v2"],
)
def test_valid_topics(topics: str) -> None:
    assert rules.check_topics(topics) == []


@pytest.mark.parametrize("group_id", ["", "  ", "my group", "tab\tgroup"])
def test_invalid_group_ids(group_id: str) -> None:
    [problem] = _problems(group_id=group_id)
    assert problem.field == "group_id"


def test_every_problem_is_reported_at_once_naming_field_and_fix() -> None:
    with pytest.raises(ScaffoldError) as caught:
        check_answers(Answers(project_name="", package_name="class", topics="a/b", group_id=""))
    assert [p.field for p in caught.value.problems] == ["project_name", "package_name", "topics", "group_id"]
    assert caught.value.field == "project_name"
    message = str(caught.value)
    for text in ("project_name", "package_name 'class'", "topics 'a/b'", "group_id", "fix:"):
        assert text in message


def test_default_package_name_follows_the_project_name() -> None:
    assert rules.default_package_name("Orders-Consumer.v2") == "orders_consumer_v2"


def test_topic_plans_name_modules_classes_and_schemas() -> None:
    orders, payments, odd = rules.plan_topics("orders, payments.v1,1st-topic")
    assert (
        orders.topic,
        orders.schema_name,
        orders.module,
        orders.handler_class,
        orders.model_package,
        orders.model_class,
    ) == ("orders", "orders", "orders_handler", "OrdersHandler", "orders", "OrdersEvent")
    assert (payments.schema_name, payments.module, payments.handler_class, payments.model_package) == (
        "payments.v1",
        "payments_v1_handler",
        "PaymentsV1Handler",
        "payments_v1",
    )
    # a schemaName must start with a letter (toolkit.layout), so this topic's subject folder gets a prefix
    assert (odd.schema_name, odd.module, odd.handler_class) == (
        "topic-1st-topic",
        "topic_1st_topic_handler",
        "Topic1stTopicHandler",
    )


def test_rules_repeat_codegens_package_naming() -> None:
    from toolkit.codegen.render import package_name

    for name in ("orders", "payments.v1", "topic-1st-topic", "class", "Orders-V2"):
        assert rules.package_name(name) == package_name(name)
