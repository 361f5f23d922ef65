"""The classes and splits of both studies, named once."""

SPLITS = ("train", "validation", "test")
CLASS_NAMES = ("cat", "dog")  # index = label: cat 0, dog 1, everywhere

DIGITS_DATASETS = ("mnist", "fashion_mnist")  # dvc.yaml's digits_datasets: the digits stages run once per dataset
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
