"""Stage 5, reports: metrics, the thesis-style run report, run comparisons and the sweep leaderboard."""
