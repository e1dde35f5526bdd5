"""Real services for K2's distributed mode, started by K2 itself (tests, ``k2 dev``): see docs/distributed.md.

Kafka (KRaft) and Apicurio Registry and s3proxy run from Maven Central artifacts with local Java;
PostgreSQL comes from Debian's packages. Everything listens on 127.0.0.1.
"""

from k2.devservices.common import cache_dir, free_port
from k2.devservices.kafka import KAFKA_VERSION, KafkaCluster
from k2.devservices.postgres import PostgresCredentials, PostgresServer
from k2.devservices.registry import APICURIO_VERSION, ApicurioRegistry
from k2.devservices.s3 import S3Credentials, S3Proxy
from k2.devservices.stack import DevPorts, DevStack

__all__ = [
    "APICURIO_VERSION",
    "KAFKA_VERSION",
    "ApicurioRegistry",
    "DevPorts",
    "DevStack",
    "KafkaCluster",
    "PostgresCredentials",
    "PostgresServer",
    "S3Credentials",
    "S3Proxy",
    "cache_dir",
    "free_port",
]
