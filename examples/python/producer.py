#!/usr/bin/env python3
"""Publish one reserve to reservation-worker and wait for its outcome.

A producer in a few steps, with pika:
1. listen first: a private queue bound to the events exchange, so the
   outcome cannot be missed;
2. publish the command persistent, with a publisher confirm (and mandatory,
   so a missing binding is an error, not a silent drop);
3. wait for the event whose correlation_id is the command's command_id.

The resource is defined first (a define is a command like any other), so the
example runs against an empty system. Both bodies are validated against the
JSON Schemas in schema/.

Environment (the worker's defaults otherwise):
  AMQP_URL                     amqp://guest:guest@127.0.0.1:5672/%2f (the first of a list)
  RW_AMQP__COMMANDS_EXCHANGE   reservations.commands
  RW_AMQP__EVENTS_EXCHANGE     reservations.events
  RESOURCE_ID                  example-<random>
  TIMEOUT_SECS                 30
"""

import json
import os
import pathlib
import sys
import time
import uuid

import jsonschema
import pika

SCHEMAS = pathlib.Path(__file__).resolve().parent.parent.parent / "schema"


def schema(name):
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / name).read_text()))


COMMAND_SCHEMA = schema("command.schema.json")
EVENT_SCHEMA = schema("event.schema.json")


def settings():
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
    return {
        "url": url.split(",")[0].strip(),
        "commands": os.environ.get("RW_AMQP__COMMANDS_EXCHANGE", "reservations.commands"),
        "events": os.environ.get("RW_AMQP__EVENTS_EXCHANGE", "reservations.events"),
        "resource": os.environ.get("RESOURCE_ID", f"example-{uuid.uuid4().hex[:8]}"),
        "timeout": float(os.environ.get("TIMEOUT_SECS", "30")),
    }


def publish(channel, exchange, command):
    """Publishes one command and returns once the broker confirmed it."""
    COMMAND_SCHEMA.validate(command)
    channel.basic_publish(
        exchange=exchange,
        routing_key=command["resource_id"],
        body=json.dumps(command).encode(),
        properties=pika.BasicProperties(
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
        ),
        # With confirm_delivery(), a nack or an unroutable message raises.
        mandatory=True,
    )


def outcome(channel, queue, command_id, timeout):
    """The outcome event of `command_id`, validated against the schema."""
    deadline = time.monotonic() + timeout
    for method, properties, body in channel.consume(queue, auto_ack=True, inactivity_timeout=0.5):
        if time.monotonic() > deadline:
            break
        if method is None:
            continue
        if properties.correlation_id != command_id:
            continue  # another producer's command
        event = json.loads(body)
        EVENT_SCHEMA.validate(event)
        channel.cancel()
        return method.routing_key, event
    channel.cancel()
    sys.exit(
        f"no outcome for {command_id} within {timeout:.0f} s: is a worker running "
        "(`reservation-worker status`), and do the exchange names match its settings?"
    )


def main():
    s = settings()
    connection = pika.BlockingConnection(pika.URLParameters(s["url"]))
    channel = connection.channel()
    channel.confirm_delivery()

    # 1. Listen first. Exclusive: the broker deletes the queue when this
    # connection closes (not auto-delete, which would end it with the first
    # consumer cancelled below).
    queue = channel.queue_declare(queue="", exclusive=True).method.queue
    for key in ("define.*", "reserve.*"):
        channel.queue_bind(queue=queue, exchange=s["events"], routing_key=key)

    # 2. Define the resource, then reserve on it; each waits for its outcome.
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
        publish(channel, s["commands"], command)
        key, event = outcome(channel, queue, command["command_id"], s["timeout"])
        detail = (
            f"remaining {event['remaining']}"
            if event["outcome"] == "accepted"
            else f"{event['reason']}: {event.get('detail', '')}"
        )
        print(f"{command['type']} {command['command_id']} on {s['resource']}: {key} ({detail})")
    connection.close()


if __name__ == "__main__":
    try:
        main()
    except pika.exceptions.ChannelClosedByBroker as e:
        if e.reply_code == 404:
            sys.exit(f"{e.reply_text}: run `reservation-worker setup` first")
        raise
    except pika.exceptions.AMQPConnectionError as e:
        sys.exit(f"cannot connect to the broker ({e!r}): is it running, and is AMQP_URL right?")
