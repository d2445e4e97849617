"""The library's training stages as tasks for `lafs.engine.fit`: LAFS pretraining and the landmark predictor."""
