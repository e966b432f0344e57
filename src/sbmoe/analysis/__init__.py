"""What the experts do: routing statistics and plots."""
