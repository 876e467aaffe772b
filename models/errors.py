"""The one error every architecture builder raises for a model it cannot build."""


class ModelError(ValueError):
    """A model that cannot be built: a user's factory that cannot be imported or called, or does not build a
    backbone-and-head model; a zoo that is not installed, or a model or option the zoo refuses."""
