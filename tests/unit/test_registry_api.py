"""The public API of toolkit.registry is exactly its __all__."""

import toolkit.registry as registry


def test_all_is_exactly_the_public_api():
    public = {name for name in vars(registry) if not name.startswith("_")} - {
        "base",
        "cache",
        "factory",
        "http",
        "local",
        "commands",
    }
    assert set(registry.__all__) == public
    assert registry.__all__ == sorted(registry.__all__)
