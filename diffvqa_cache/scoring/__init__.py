"""Using a fitted run: the `Scorer` (new videos and cached ones), the familiarity flag, reports and plots."""
