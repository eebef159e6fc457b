"""Checks for /app/calc.py."""

import importlib.util
import pathlib

CALC = pathlib.Path("/app/calc.py")


def load_calc():
    spec = importlib.util.spec_from_file_location("calc", CALC)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_calc_module_exists():
    assert CALC.is_file(), f"{CALC} does not exist"


def test_add():
    calc = load_calc()
    assert calc.add(2, 3) == 5
    assert calc.add(-1, 1) == 0
    assert abs(calc.add(0.1, 0.2) - 0.3) < 1e-9


def test_mul():
    calc = load_calc()
    assert calc.mul(4, 5) == 20
    assert calc.mul(-2, 3) == -6
    assert calc.mul(1.5, 2) == 3.0
