"""The classes and splits of both studies, named once."""

import numpy as np

SPLITS = ("train", "validation", "test")
CLASS_NAMES = ("cat", "dog")  # index = label: cat 0, dog 1, everywhere

DIGITS_DATASETS = ("mnist", "fashion_mnist")  # dvc.yaml's digits_datasets: the digits stages run once per dataset
CATS_DOGS = "cats_dogs"  # the fine-tuned model's name among the exported models, the digits ones being their datasets'
EXPORTED = (CATS_DOGS, *DIGITS_DATASETS)  # dvc.yaml's exported: the models export ships, one run each
DIGITS_CLASS_NAMES = {
    "mnist": tuple(str(digit) for digit in range(10)),
    "fashion_mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
}


def predicted_labels(dog_probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """Labels (0 cat / 1 dog) for P(dog): a dog from ``threshold`` up, the one place the threshold is applied."""
    return (np.asarray(dog_probabilities) >= threshold).astype(int)


def outputs_of(exported: str) -> int:
    """How many outputs the exported model ``exported`` gives: P(dog) alone, or one per digits class."""
    return 1 if exported == CATS_DOGS else len(DIGITS_CLASS_NAMES[exported])
