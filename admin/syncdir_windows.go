package admin

// syncDir: Windows has no directory fsync; a rename is made durable with
// the file system's own journal.
func syncDir(dir string) error { return nil }
