"""Local Kafka and Redis servers for `python -m pipeline dev` and the test session, so
neither developers nor CI need Docker or a pre-installed cluster."""
