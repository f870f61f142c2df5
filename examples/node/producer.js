#!/usr/bin/env node
// Publish one reserve to reservation-worker and wait for its outcome.
//
// A producer in a few steps, with amqplib:
// 1. listen first: a private queue bound to the events exchange, so the
//    outcome cannot be missed;
// 2. publish the command persistent on a confirm channel (and mandatory, so
//    a missing binding is an error, not a silent drop);
// 3. wait for the event whose correlation_id is the command's command_id.
//
// The resource is defined first (a define is a command like any other), so
// the example runs against an empty system. Both bodies are validated
// against the JSON Schemas in schema/.
//
// Environment (the worker's defaults otherwise):
//   AMQP_URL                    amqp://guest:guest@127.0.0.1:5672/%2f (the first of a list)
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
addFormats(ajv);
// The schemas are generated from the Rust types, which mark integer widths
// as formats.
for (const [name, max] of [['uint8', 0xff], ['uint16', 0xffff], ['uint32', 0xffffffff], ['uint64', Number.MAX_SAFE_INTEGER]]) {
  ajv.addFormat(name, { type: 'number', validate: (n) => Number.isInteger(n) && n >= 0 && n <= max });
}
const load = (name) =>
  ajv.compile(JSON.parse(fs.readFileSync(path.join(schemas, name), 'utf8')));
const validCommand = load('command.schema.json');
const validEvent = load('event.schema.json');

function check(validate, body, what) {
  if (!validate(body)) {
    throw new Error(`${what} does not match its schema: ${ajv.errorsText(validate.errors)}`);
  }
}

const settings = {
  url: (process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/%2f').split(',')[0].trim(),
  commands: process.env.RW_AMQP__COMMANDS_EXCHANGE || 'reservations.commands',
  events: process.env.RW_AMQP__EVENTS_EXCHANGE || 'reservations.events',
  resource: process.env.RESOURCE_ID || `example-${randomUUID().slice(0, 8)}`,
  timeoutSecs: Number(process.env.TIMEOUT_SECS || 30),
};

async function main() {
  const connection = await amqp.connect(settings.url);
  // A closed channel (a missing exchange) rejects the pending calls; the
  // connection's own error event is noise then.
  connection.on('error', () => {});
  const channel = await connection.createConfirmChannel();
  channel.on('return', (msg) => {
    console.error(`returned unroutable: ${msg.fields.routingKey}`);
  });

  // 1. Listen first: outcomes arrive in `waiting` by command_id.
  const { queue } = await channel.assertQueue('', { exclusive: true, autoDelete: true });
  for (const key of ['define.*', 'reserve.*']) {
    await channel.bindQueue(queue, settings.events, key);
  }
  const waiting = new Map();
  await channel.consume(
    queue,
    (msg) => {
      const resolve = waiting.get(msg.properties.correlationId);
      if (resolve) resolve(msg);
    },
    { noAck: true },
  );

  const outcome = (commandId) =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        waiting.delete(commandId);
        reject(
          new Error(
            `no outcome for ${commandId} within ${settings.timeoutSecs} s: is a worker running ` +
              '(`reservation-worker status`), and do the exchange names match its settings?',
          ),
        );
      }, settings.timeoutSecs * 1000);
      waiting.set(commandId, (msg) => {
        clearTimeout(timer);
        waiting.delete(commandId);
        resolve(msg);
      });
    });

  // 2. Define the resource, then reserve on it; each waits for its outcome.
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
    const answered = outcome(command.command_id);
    channel.publish(settings.commands, command.resource_id, Buffer.from(JSON.stringify(command)), {
      persistent: true,
      contentType: 'application/json',
      mandatory: true,
    });
    await channel.waitForConfirms(); // rejects on a nack
    const msg = await answered;
    const event = JSON.parse(msg.content.toString());
    check(validEvent, event, 'the outcome event');
    const detail =
      event.outcome === 'accepted'
        ? `remaining ${event.remaining}`
        : `${event.reason}: ${event.detail || ''}`;
    console.log(
      `${command.type} ${command.command_id} on ${settings.resource}: ${msg.fields.routingKey} (${detail})`,
    );
  }
  await channel.close();
  await connection.close();
}

main().catch((e) => {
  const notFound = e.code === 404 || /NOT_FOUND/.test(String(e.message));
  console.error(
    notFound ? `${e.message}: run \`reservation-worker setup\` first` : `error: ${e.message}`,
  );
  process.exit(1);
});
