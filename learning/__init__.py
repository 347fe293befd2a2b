"""Learning from recordings: datasets, training, collection, closed-loop and open-loop evaluation,
alignment, LeRobot export, episode video and the demo."""
