"""Models: frozen teachers, students, reprogramming transforms, projectors and FLOPs."""
