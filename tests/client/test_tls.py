"""TLS and mutual TLS of both clients (C++ flags --tls_ca/--tls_cert/--tls_key,
Python Client(tls_...)) against lpdetr-server with certificates made by openssl."""
import pathlib
import tempfile
import unittest

import grpc

import harness
from lpdetr_client import Client

CLIENT = str(harness.BIN_DIR / "lpdetr-client")


class MutualTlsTest(unittest.TestCase):
    """Both clients' TLS flags against a server that requires client certificates."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="lpdetr-client-tls-")
        cls.dir = pathlib.Path(cls.tmp.name)
        cls.certs = harness.make_certificates(cls.dir / "certs")
        model = harness.small_model(cls.dir)
        c = cls.certs
        cls.server = harness.Server(
            model, ["--tls_cert=" + c["server.pem"], "--tls_key=" + c["server.key"],
                    "--tls_ca=" + c["ca.pem"]],
            tls={"ca": c["ca.pem"], "cert": c["client.pem"], "key": c["client.key"]})

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.tmp.cleanup()

    def client(self, *args, check=0):
        return harness.run([CLIENT] + list(args) + ["--address=" + self.server.address],
                           check=check)

    def test_cpp_client_mutual_tls(self):
        c = self.certs
        tls = ["--tls_ca=" + c["ca.pem"], "--tls_cert=" + c["client.pem"],
               "--tls_key=" + c["client.key"]]
        self.assertIn("SERVING", self.client("health", *tls).stdout)
        # The certificate names 127.0.0.1 and localhost; an override works too.
        self.client("health", *tls, "--tls_server_name=localhost")
        result = self.client("detect", harness.SAMPLE_IMAGE, "--score_threshold=0",
                             "--max_detections=2", *tls)
        self.assertIn("2 detections", result.stdout)
        # No client certificate, or no TLS at all: refused.
        self.client("health", "--tls_ca=" + c["ca.pem"], "--timeout=5", check=1)
        self.client("health", "--timeout=5", check=1)
        # Half a client identity is a usage error on our side.
        self.assertIn("--tls_key", self.client("health", "--tls_ca=" + c["ca.pem"],
                                               "--tls_cert=" + c["client.pem"],
                                               check=1).stderr)

    def test_python_client_mutual_tls(self):
        c = self.certs
        with Client(self.server.address, tls_ca=c["ca.pem"], tls_cert=c["client.pem"],
                    tls_key=c["client.key"], tls_server_name="localhost") as client:
            self.assertEqual(client.health(), "SERVING")
            response = client.detect(harness.SAMPLE_IMAGE, score_threshold=0.0,
                                     max_detections=2)
            self.assertEqual(len(response.results[0].detections), 2)
        with Client(self.server.address, tls_ca=c["ca.pem"], timeout=5) as client:
            with self.assertRaises(grpc.RpcError):
                client.health()


if __name__ == "__main__":
    unittest.main()
