from toolkit.consumer.stats import ConsumerStats


def test_stats_per_topic_and_table():
    stats = ConsumerStats()
    stats["orders"].processed += 3
    stats["orders"].retried += 2
    stats["orders"].dead_lettered["validation"] += 2
    stats["orders"].dead_lettered["decode"] += 1
    stats["shipments"].processed += 1
    assert stats["orders"].dead_lettered_total == 3
    assert stats.as_dict()["orders"]["dead_lettered"] == {"decode": 1, "validation": 2}
    table = stats.table().splitlines()
    assert table[0].split() == ["topic", "processed", "retried", "dead-lettered", "by", "stage"]
    assert table[2].split() == ["orders", "3", "2", "3", "decode=1,", "validation=2"]
    assert table[3].split() == ["shipments", "1", "0", "0", "-"]
