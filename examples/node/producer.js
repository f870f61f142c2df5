#!/usr/bin/env node
// Define a resource, reserve on it, and wait for each outcome, with amqplib.
//
// A producer in three steps:
// 1. listen first: a private queue (exclusive, auto-delete) bound to the
//    events exchange for this producer's own routing keys (`define.*`,
//    `reserve.*`), so no outcome can be missed;
// 2. publish each command persistent, as application/json, on a confirm
//    channel, and mandatory, so a command no queue takes is an error rather
//    than a silent drop;
// 3. wait, up to a deadline, for the event whose `command_id` is the
//    command's (the worker also sets it as the message's `correlation_id`).
//
// Both bodies, the command sent and the event received, are validated
// against the JSON Schemas in schema/ (draft 2020-12, hence Ajv2020). Prints
// one line per command and exits 0 when each got its outcome, accepted or
// rejected; exits 1 on a timeout, a broker error or a body that does not
// match its schema.
//
// Environment (the worker's defaults otherwise):
//   AMQP_URL                    amqp://guest:guest@127.0.0.1:5672/%2f
//                               (a comma-separated list: the nodes of one cluster)
//   RW_AMQP__COMMANDS_EXCHANGE  reservations.commands
//   RW_AMQP__EVENTS_EXCHANGE    reservations.events
//   RESOURCE_ID                 example-<random>
//   TIMEOUT_SECS                30

'use strict';

const amqp = require('amqplib');
const Ajv2020 = require('ajv/dist/2020');
const addFormats = require('ajv-formats');
const { randomUUID } = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

const schemas = path.join(__dirname, '..', '..', 'schema');
const ajv = new Ajv2020({ allErrors: true });
addFormats(ajv); // date-time, uuid
// The schemas are generated from the Rust types, which name integer widths
// as formats.
for (const [name, max] of [['uint32', 0xffffffff], ['uint64', Number.MAX_SAFE_INTEGER]]) {
  ajv.addFormat(name, { type: 'number', validate: (n) => Number.isInteger(n) && n >= 0 && n <= max });
}
const load = (name) => ajv.compile(JSON.parse(fs.readFileSync(path.join(schemas, name), 'utf8')));
const validCommand = load('command.schema.json');
const validEvent = load('event.schema.json');

/** Why the example stops with exit status 1. */
class Failed extends Error {}

function check(validate, body, what) {
  if (validate(body)) return;
  // The command schema is a oneOf by `type`: the errors of the branch the
  // body names say what is wrong; the other branches' only add noise.
  let errors = validate.errors;
  const branch = (validate.schema.oneOf || []).find((b) => b.properties?.type?.const === body?.type);
  if (branch) {
    const alone = ajv.compile({ ...branch, $defs: validate.schema.$defs });
    if (!alone(body)) errors = alone.errors;
  }
  const reasons = [...new Set(errors.map((e) => `${e.instancePath || '/'} ${e.message}`))].slice(0, 6);
  throw new Failed(`${what} does not match its schema: ${reasons.join('; ')}\n${JSON.stringify(body).slice(0, 1000)}`);
}

const urls = (process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/%2f')
  .split(',')
  .map((u) => u.trim())
  .filter(Boolean);
const start = Math.floor(Math.random() * urls.length); // each producer starts at a different node
const settings = {
  urls: [...urls.slice(start), ...urls.slice(0, start)],
  commands: process.env.RW_AMQP__COMMANDS_EXCHANGE || 'reservations.commands',
  events: process.env.RW_AMQP__EVENTS_EXCHANGE || 'reservations.events',
  resource: process.env.RESOURCE_ID || `example-${randomUUID().slice(0, 8)}`,
  timeoutSecs: Number(process.env.TIMEOUT_SECS || 30),
};

/** The first node of AMQP_URL that answers. */
async function connect() {
  let last;
  for (const url of settings.urls) {
    try {
      return await amqp.connect(url);
    } catch (e) {
      last = e; // names the host, never the URL (it may hold a password)
    }
  }
  throw new Failed(`cannot connect to the broker (${last.message}): is it running, and is AMQP_URL right?`);
}

/** The outcome events of this producer's commands, by command_id. */
class Outcomes {
  constructor() {
    this.waiting = new Map();
  }

  /** Starts waiting before the command is published, so an early event is kept. */
  expect(commandId) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.settle(commandId);
        reject(
          new Failed(
            `no outcome for command ${commandId} within ${settings.timeoutSecs} s. Is a worker ` +
              'running (`reservation-worker status`), and are RW_AMQP__COMMANDS_EXCHANGE and ' +
              "RW_AMQP__EVENTS_EXCHANGE the worker's?",
          ),
        );
      }, settings.timeoutSecs * 1000);
      this.waiting.set(commandId, { resolve, reject, timer });
    });
  }

  /** An event from the queue. The exchange carries every producer's
   * outcomes for these routing keys; only the awaited ones are kept. */
  arrived(msg) {
    const waiter = this.settle(msg.properties.correlationId);
    if (waiter) waiter.resolve(msg);
  }

  /** A command of ours the broker returned as unroutable. */
  returned(msg) {
    const waiter = this.settle(msg.properties.messageId);
    if (waiter) {
      waiter.reject(
        new Failed(`${settings.commands} routed the command to no queue: run \`reservation-worker setup\` first`),
      );
    }
  }

  settle(commandId) {
    const waiter = this.waiting.get(commandId);
    if (waiter) {
      clearTimeout(waiter.timer);
      this.waiting.delete(commandId);
    }
    return waiter;
  }
}

/** The one line printed for a command's outcome. */
function describe(command, routingKey, event) {
  const detail = event.outcome === 'accepted' ? `remaining ${event.remaining}` : `${event.reason}: ${event.detail}`;
  return `${command.type} ${command.command_id} on ${command.resource_id}: ${routingKey} (${detail})`;
}

async function main() {
  const connection = await connect();
  // A channel closed by the broker (a missing exchange) rejects the pending
  // call, which says what happened; the connection's own event adds nothing.
  connection.on('error', () => {});
  try {
    const channel = await connection.createConfirmChannel();
    const outcomes = new Outcomes();
    channel.on('return', (msg) => outcomes.returned(msg));
    // Why the broker closed the channel (a publish to a missing exchange),
    // emitted before the pending confirms fail with a bare "channel closed".
    let closedBy;
    channel.on('error', (e) => {
      closedBy = e;
    });

    // 1. Listen first.
    const { queue } = await channel.assertQueue('', { exclusive: true, autoDelete: true });
    for (const key of ['define.*', 'reserve.*']) {
      await channel.bindQueue(queue, settings.events, key);
    }
    await channel.consume(queue, (msg) => msg && outcomes.arrived(msg), { noAck: true });

    // 2. and 3. Define the resource, then reserve on it.
    const define = {
      type: 'define',
      command_id: randomUUID(),
      resource_id: settings.resource,
      capacity: 10,
      per_customer_limit: 4,
    };
    const reserve = {
      type: 'reserve',
      command_id: randomUUID(),
      resource_id: settings.resource,
      customer_id: 'customer-7',
      quantity: 2,
    };
    for (const command of [define, reserve]) {
      check(validCommand, command, 'the command');
      const outcome = outcomes.expect(command.command_id);
      channel.publish(settings.commands, command.resource_id, Buffer.from(JSON.stringify(command)), {
        persistent: true,
        contentType: 'application/json',
        messageId: command.command_id,
        mandatory: true,
      });
      // The confirm (rejects on a nack) and the outcome (rejects on the
      // deadline or a return), whichever fails first.
      const [, msg] = await Promise.all([
        channel.waitForConfirms().catch((e) => {
          if (closedBy) throw closedBy;
          throw new Failed(`the broker did not take the command ${command.command_id}: ${e.message}`);
        }),
        outcome,
      ]);
      let event;
      try {
        event = JSON.parse(msg.content.toString());
      } catch (e) {
        throw new Failed(`the outcome of ${command.command_id} is not JSON: ${e.message}`);
      }
      check(validEvent, event, 'the outcome event');
      if (event.command_id !== command.command_id) {
        throw new Failed(`the event for ${command.command_id} names command ${event.command_id}`);
      }
      console.log(describe(command, msg.fields.routingKey, event));
    }
  } finally {
    await connection.close().catch(() => {});
  }
}

main().catch((e) => {
  if (e instanceof Failed) {
    console.error(`error: ${e.message}`);
  } else if (e.code === 404) {
    console.error(`error: ${e.message}: run \`reservation-worker setup\` first`);
  } else {
    console.error(`error: ${e.message}`);
  }
  process.exit(1);
});
