"""What several aoe processes share through Redis: rate limits, daily spend, run
records and the queue. Imported only when a Redis is configured."""
