"""Reading a run: the leaderboard, the HTML report, status, export of a candidate, and the headless browser that
checks the report. Nothing here changes a run's store."""
