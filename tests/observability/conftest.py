import base64

import pytest
from prometheus_client.parser import text_string_to_metric_families

from marketplace import metrics

# Multiprocess mode is set up in this process now, at collection, so that every worker process a
# test starts (tests/conftest.py copies os.environ) inherits its PROMETHEUS_MULTIPROC_DIR: the
# workers would otherwise derive another directory from their database name, which pytest-django
# changes after the settings were read.
metrics.instruments()

CREDENTIALS = "prometheus:scrape-s3cret"


def basic_auth(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


class Scrape:
    """One /metrics answer, parsed."""

    def __init__(self, text: str):
        self.text = text
        self.families = list(text_string_to_metric_families(text))

    def names(self) -> set[str]:
        """Every name a query can use: families (even without samples) and their samples."""
        return {family.name for family in self.families} | {
            sample.name for family in self.families for sample in family.samples
        }

    def samples(self, name: str, **labels: str) -> list:
        return [
            sample
            for family in self.families
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples named ``name`` that carry ``labels`` (0 if there is none)."""
        return sum(sample.value for sample in self.samples(name, **labels))


@pytest.fixture
def metrics_credentials(settings):
    settings.METRICS_BASIC_AUTH = CREDENTIALS
    return CREDENTIALS


@pytest.fixture
def scrape(client, metrics_credentials):
    """``scrape()``: GET /metrics with the right credentials, parsed."""

    def get() -> Scrape:
        response = client.get("/metrics", HTTP_AUTHORIZATION=basic_auth(metrics_credentials))
        assert response.status_code == 200, response.content
        return Scrape(response.content.decode())

    return get
