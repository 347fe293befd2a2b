"""rosbag2 (MCAP) recordings: record, replay, read (with salvage of unfinished files), split, message types."""
