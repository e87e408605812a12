import simulators


def test_x():
    assert simulators
