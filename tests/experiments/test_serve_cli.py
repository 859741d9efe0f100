"""`experiments.serve`'s command line (the server itself: tests/deploy/test_service.py)."""
import pytest

from experiments import serve


@pytest.mark.parametrize('spec, want', [('bundles/cube', ('', 'bundles/cube')),
                                        ('cube=bundles/cube', ('cube', 'bundles/cube')),
                                        ('/data/run=3/bundle', ('', '/data/run=3/bundle')),
                                        ('top=/data/run=3/bundle', ('top', '/data/run=3/bundle'))])
def test_a_bundle_is_named_by_what_precedes_the_first_equals_sign(spec, want):
  assert serve.bundle_spec(spec) == want
