"""Suite-wide checks on how pytest-xdist schedules the tests, and the tiny runs several test modules share."""
import pytest

from tests import tiny_run


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


@pytest.fixture(scope='session')
def finished(tmp_path_factory):
  """(config, table) of the tiny G²SF run; tests using it carry `pytest.mark.xdist_group(tiny_run.GROUP)`."""
  from experiments import runner
  config = tiny_run.tiny_config(tmp_path_factory.mktemp('run'))
  return config, runner.run(config)


@pytest.fixture(scope='session')
def every_method(finished, tmp_path_factory):
  """(work directory, {method: table}): a copy of `finished` in which BTF, M3DM and CFM ran too."""
  shared = tmp_path_factory.mktemp('every') / 'w'
  return shared, tiny_run.every_method(finished[0].workdir, shared)
