"""Validate params.yaml with model.name vgg16 and a tune.splits list, and print the model's name and whether timm
and torch were imported: run by tests/test_config.py in the project root."""

import sys

import yaml

from adaskip.config import parse_params

raw = yaml.safe_load(open("params.yaml"))
raw["model"]["name"] = "vgg16"
raw["tune"]["splits"] = [[0, 1, 1, 1]]
p = parse_params(raw)
print(p.model.name, "timm" in sys.modules, "torch" in sys.modules)
