"""lrface: low-resolution face recognition service."""
