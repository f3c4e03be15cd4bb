"""What an experiment folder says: one reader of its plain files (`ExperimentFolder`), the
leaderboard and summary, the border check, the HTML report and its charts."""
