'use strict';
// Node preload (`node -r ./force-loopback.js server.js`): every TCP server listens on 127.0.0.1.
// Handles listen(), listen(cb), listen(port[, host][, backlog][, cb]) and listen({port, host}).
// Unix-socket paths and inherited handles are left alone.
const net = require('net');
const HOST = '127.0.0.1';
const originalListen = net.Server.prototype.listen;

net.Server.prototype.listen = function listen(...args) {
  const cb = typeof args[args.length - 1] === 'function' ? args.pop() : undefined;
  const first = args[0];
  let options;
  if (first !== null && typeof first === 'object' && !('path' in first || 'fd' in first || '_handle' in first || 'handle' in first)) {
    options = { ...first, host: HOST, ipv6Only: false };
  } else if (first === undefined || first === null || typeof first === 'number' || /^\d+$/.test(String(first))) {
    const backlog = args.slice(1).find((a) => typeof a === 'number');
    options = { port: Number(first ?? 0), host: HOST, ...(backlog === undefined ? {} : { backlog }) };
  }
  if (options === undefined) return originalListen.apply(this, cb ? [...args, cb] : args);
  return originalListen.call(this, options, ...(cb ? [cb] : []));
};
