#!/usr/bin/env python3
"""Define a resource, reserve on it, and wait for each outcome, with pika.

A producer in three steps:
1. listen first: a private queue (exclusive, auto-delete) bound to the
   events exchange for this producer's own routing keys (`define.*`,
   `reserve.*`), so no outcome can be missed;
2. publish each command persistent, as application/json, with a publisher
   confirm, and mandatory, so a command no queue takes is an error rather
   than a silent drop;
3. wait, up to a deadline, for the event whose `command_id` is the
   command's (the worker also sets it as the message's `correlation_id`).

Both bodies, the command sent and the event received, are validated against
the JSON Schemas in schema/. Prints one line per command and exits 0 when
each got its outcome, accepted or rejected; exits 1 on a timeout, a broker
error or a body that does not match its schema.

Environment (the worker's defaults otherwise):
  AMQP_URL                     amqp://guest:guest@127.0.0.1:5672/%2f
                               (a comma-separated list: the nodes of one cluster)
  RW_AMQP__COMMANDS_EXCHANGE   reservations.commands
  RW_AMQP__EVENTS_EXCHANGE     reservations.events
  RESOURCE_ID                  example-<random>
  TIMEOUT_SECS                 30
"""

import json
import os
import pathlib
import random
import sys
import time
import uuid

import jsonschema
import pika

SCHEMAS = pathlib.Path(__file__).resolve().parent.parent.parent / "schema"


def validator(name):
    """A draft 2020-12 validator of schema/<name> that also checks formats
    (date-time, uuid). The uint32/uint64 formats are the Rust types' widths;
    `minimum`/`maximum` already bound them."""
    schema = json.loads((SCHEMAS / name).read_text())
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


COMMAND_SCHEMA = validator("command.schema.json")
EVENT_SCHEMA = validator("event.schema.json")


class Failed(Exception):
    """Why the example stops with exit status 1."""


def settings():
    urls = [u.strip() for u in os.environ.get(
        "AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f").split(",") if u.strip()]
    # Each producer starts at a different node of the cluster.
    start = random.randrange(len(urls))
    return {
        "urls": urls[start:] + urls[:start],
        "commands": os.environ.get("RW_AMQP__COMMANDS_EXCHANGE", "reservations.commands"),
        "events": os.environ.get("RW_AMQP__EVENTS_EXCHANGE", "reservations.events"),
        "resource": os.environ.get("RESOURCE_ID", f"example-{uuid.uuid4().hex[:8]}"),
        "timeout": float(os.environ.get("TIMEOUT_SECS", "30")),
    }


def leaves(errors):
    """The innermost errors: an anyOf/oneOf error only says no branch fit."""
    for e in errors:
        if e.context:
            yield from leaves(e.context)
        else:
            yield e


def check(schema, body, what):
    errors = list(schema.iter_errors(body))
    if not errors:
        return
    # The command schema is a oneOf by `type`: the errors of the branch the
    # body names say what is wrong; the other branches' only add noise.
    branches = schema.schema.get("oneOf", [])
    named = [i for i, b in enumerate(branches)
             if isinstance(body, dict) and b["properties"]["type"].get("const") == body.get("type")]
    if named and len(errors) == 1 and errors[0].validator == "oneOf":
        errors = [e for e in errors[0].context if e.relative_schema_path[0] == named[0]] or errors
    reasons = list(dict.fromkeys(f"{e.json_path} {e.message:.200}" for e in leaves(errors)))
    reasons = "; ".join(reasons[:6])
    raise Failed(f"{what} does not match its schema: {reasons}\n{json.dumps(body):.1000}")


class Outcomes:
    """The outcome events of this producer's commands, by command_id."""

    def __init__(self, connection, channel, queue):
        self.connection = connection
        self.waiting = set()
        self.arrived = {}
        # One consumer for the whole run: the queue is auto-delete, so the
        # broker would delete it as soon as a first consumer went away.
        channel.basic_consume(queue, self._on_event, auto_ack=True)

    def _on_event(self, _channel, method, properties, body):
        # The exchange carries every producer's outcomes for these routing
        # keys; keep only the ones awaited here.
        if properties.correlation_id in self.waiting:
            self.arrived[properties.correlation_id] = (method.routing_key, body)

    def expect(self, command_id):
        """Call before publishing, so an early event is kept."""
        self.waiting.add(command_id)

    def wait(self, command_id, timeout):
        deadline = time.monotonic() + timeout
        while command_id not in self.arrived:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failed(
                    f"no outcome for command {command_id} within {timeout:g} s. Is a worker "
                    "running (`reservation-worker status`), and are RW_AMQP__COMMANDS_EXCHANGE "
                    "and RW_AMQP__EVENTS_EXCHANGE the worker's?"
                )
            self.connection.process_data_events(time_limit=min(left, 0.5))
        self.waiting.discard(command_id)
        routing_key, body = self.arrived.pop(command_id)
        try:
            event = json.loads(body)
        except ValueError as e:
            raise Failed(f"the outcome of {command_id} is not JSON: {e}") from e
        check(EVENT_SCHEMA, event, "the outcome event")
        if event["command_id"] != command_id:
            raise Failed(f"the event for {command_id} names command {event['command_id']}")
        return routing_key, event


def publish(channel, exchange, command):
    """Publishes one command; returns once the broker has confirmed it."""
    check(COMMAND_SCHEMA, command, "the command")
    try:
        channel.basic_publish(
            exchange=exchange,
            routing_key=command["resource_id"],
            body=json.dumps(command).encode(),
            properties=pika.BasicProperties(
                content_type="application/json",
                delivery_mode=pika.DeliveryMode.Persistent,
                message_id=command["command_id"],
            ),
            mandatory=True,
        )
    except pika.exceptions.UnroutableError as e:
        raise Failed(
            f"{exchange} routed the command to no queue: run `reservation-worker setup` first"
        ) from e
    except pika.exceptions.NackError as e:
        raise Failed(f"the broker refused the command {command['command_id']} (nack)") from e


def describe(command, routing_key, event):
    """The one line printed for a command's outcome."""
    if event["outcome"] == "accepted":
        detail = f"remaining {event['remaining']}"
    else:
        detail = f"{event['reason']}: {event['detail']}"
    return f"{command['type']} {command['command_id']} on {command['resource_id']}: {routing_key} ({detail})"


def main():
    s = settings()
    try:
        connection = pika.BlockingConnection([pika.URLParameters(u) for u in s["urls"]])
    except pika.exceptions.AMQPConnectionError as e:
        # The error names hosts, never the URL (it may hold a password).
        raise Failed(f"cannot connect to the broker ({type(e).__name__}): is it running, and is AMQP_URL right?") from e
    try:
        channel = connection.channel()
        channel.confirm_delivery()

        # 1. Listen first.
        queue = channel.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue
        for key in ("define.*", "reserve.*"):
            channel.queue_bind(queue=queue, exchange=s["events"], routing_key=key)
        outcomes = Outcomes(connection, channel, queue)

        # 2. and 3. Define the resource, then reserve on it.
        define = {
            "type": "define",
            "command_id": str(uuid.uuid4()),
            "resource_id": s["resource"],
            "capacity": 10,
            "per_customer_limit": 4,
        }
        reserve = {
            "type": "reserve",
            "command_id": str(uuid.uuid4()),
            "resource_id": s["resource"],
            "customer_id": "customer-7",
            "quantity": 2,
        }
        for command in (define, reserve):
            outcomes.expect(command["command_id"])
            publish(channel, s["commands"], command)
            routing_key, event = outcomes.wait(command["command_id"], s["timeout"])
            print(describe(command, routing_key, event), flush=True)
    except pika.exceptions.ChannelClosedByBroker as e:
        if e.reply_code == 404:
            raise Failed(f"{e.reply_text}: run `reservation-worker setup` first") from e
        raise Failed(f"the broker closed the channel: {e.reply_code} {e.reply_text}") from e
    finally:
        if connection.is_open:
            connection.close()


if __name__ == "__main__":
    try:
        main()
    except Failed as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except pika.exceptions.AMQPError as e:
        print(f"error: the broker connection failed: {e!r}", file=sys.stderr)
        sys.exit(1)
