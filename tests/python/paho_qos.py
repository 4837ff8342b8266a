#!/usr/bin/env python3
"""QoS 0/1/2 publish x subscribe with paho-mqtt 2.x over mutual TLS, for the conformance
suite (tests/tests/conformance/paho.rs).

Usage: paho_qos.py CONFIG.json

CONFIG: {"host", "port", "cafile", "version": "3.1.1" | "5", "topic",
         "subscribers": [{"id", "cert", "key", "qos"}...],
         "publisher": {"id", "cert", "key"}}

Each subscriber subscribes to `topic` at its QoS; the publisher publishes "q0", "q1", "q2"
at QoS 0, 1, 2. Prints one JSON object: {"granted": {id: [codes]}, "received": {id:
[{"topic", "payload", "qos", "retain", "dup"}]}, "error": null | "what went wrong"}.
Every wait is bounded (10 s).
"""

import json
import ssl
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

WAIT = 10.0


class Client:
    def __init__(self, conf, who):
        protocol = mqtt.MQTTv5 if conf["version"] == "5" else mqtt.MQTTv311
        self.id = who["id"]
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=who["id"],
            protocol=protocol,
        )
        self.client.tls_set(
            ca_certs=conf["cafile"],
            certfile=who["cert"],
            keyfile=who["key"],
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.connect_reason = None
        self.granted = []
        self.received = []
        self.lock = threading.Lock()
        self.client.on_connect = self.on_connect
        self.client.on_subscribe = self.on_subscribe
        self.client.on_message = self.on_message

    def on_connect(self, client, userdata, flags, reason_code, properties):
        self.connect_reason = reason_code.value
        self.connected.set()

    def on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self.granted = [rc.value for rc in reason_codes]
        self.subscribed.set()

    def on_message(self, client, userdata, message):
        with self.lock:
            self.received.append(
                {
                    "topic": message.topic,
                    "payload": message.payload.decode("utf-8", "replace"),
                    "qos": message.qos,
                    "retain": bool(message.retain),
                    "dup": bool(message.dup),
                }
            )

    def start(self, conf):
        self.client.connect(conf["host"], conf["port"], keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(WAIT):
            raise RuntimeError(f"{self.id}: no CONNACK within {WAIT} s")
        if self.connect_reason != 0:
            raise RuntimeError(f"{self.id}: CONNACK refused: {self.connect_reason}")

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()


def run(conf, out):
    subs = []
    for who in conf["subscribers"]:
        c = Client(conf, who)
        subs.append(c)
        c.start(conf)
        c.client.subscribe(conf["topic"], qos=who["qos"])
        if not c.subscribed.wait(WAIT):
            raise RuntimeError(f"{c.id}: no SUBACK within {WAIT} s")
        out["granted"][c.id] = c.granted
    pub = Client(conf, conf["publisher"])
    pub.start(conf)
    for qos in (0, 1, 2):
        info = pub.client.publish(conf["topic"], f"q{qos}", qos=qos)
        info.wait_for_publish(WAIT)
        if not info.is_published():
            raise RuntimeError(f"publish at QoS {qos} not completed within {WAIT} s")
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and any(len(c.received) < 3 for c in subs):
        time.sleep(0.02)
    # Anything more (a duplicate) would arrive now.
    time.sleep(0.3)
    for c in subs:
        with c.lock:
            out["received"][c.id] = list(c.received)
    pub.stop()
    for c in subs:
        c.stop()


def main():
    with open(sys.argv[1]) as f:
        conf = json.load(f)
    out = {"granted": {}, "received": {}, "error": None}
    try:
        run(conf, out)
    except Exception as e:  # reported to the Rust test, which fails with it
        out["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
