"""The app's panes: Search, Index, Compare and Metrics, each with its .tcss beside it."""
