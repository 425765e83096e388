pytest_plugins = ["tests.fixtures_models", "tests.fixtures_redis", "tests.callbacks_support", "tests.fixtures_cluster"]
