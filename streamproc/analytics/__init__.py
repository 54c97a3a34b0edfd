"""Analytics: the snapshot store of terminal orders, KPIs over it, and the leaderboards."""
