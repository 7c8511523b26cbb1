//! Following a log file across rotations (helper).
