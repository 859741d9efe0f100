"""Suite-wide checks on how pytest-xdist schedules the tests."""
import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
  """Under `--dist loadgroup` each worker tags a grouped test's node id with `@<group>`; where a pytest/xdist
  pair drops the tag, the group's tests are spread over the workers and each worker rebuilds the group's expensive
  fixture. Such a test fails before its fixtures, saying so, instead of silently building them twice."""
  if (getattr(item.config.option, 'loadgroup', False) and item.get_closest_marker('xdist_group')
      and '@' not in item.nodeid):
    pytest.fail(f'pytest-xdist did not tag this test with its xdist_group (pytest {pytest.__version__}), so the '
                'group is split over the workers: pin pytest and pytest-xdist in setup.cfg [options.extras_require] '
                'test', pytrace=False)
