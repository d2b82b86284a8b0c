import test from 'ava';
import { decide, matches, spiffeIdPattern } from '../src/cluster/policy.js';
import type { EndpointInfo, PolicyRule } from '../src/cluster/types.js';

const web: EndpointInfo = { ip: '10.0.1.2', spiffeId: 'spiffe://td/ns/shop/sa/web', node: 'a', namespace: 'shop', serviceAccount: 'web', labels: { app: 'web', tier: 'front' } };
const db: EndpointInfo = { ip: '10.0.2.2', spiffeId: 'spiffe://td/ns/shop/sa/db', node: 'b', namespace: 'shop', serviceAccount: 'db', labels: { app: 'db' } };

test('SPIFFE ID patterns: * stays within a segment, ** crosses segments, the rest is literal', (t) => {
  t.true(spiffeIdPattern('spiffe://td/ns/*/sa/web').test('spiffe://td/ns/shop/sa/web'));
  t.false(spiffeIdPattern('spiffe://td/ns/*/sa/web').test('spiffe://td/ns/a/b/sa/web'));
  t.true(spiffeIdPattern('spiffe://td/**').test('spiffe://td/ns/a/sa/b'));
  t.false(spiffeIdPattern('spiffe://td.x/**').test('spiffe://tdax/ns/a'), 'dots are literal');
  t.false(spiffeIdPattern('spiffe://td/ns/shop/sa/web').test('spiffe://td/ns/shop/sa/webx'));
});

test('selectors: every field given must match; empty matches all', (t) => {
  t.true(matches({}, web));
  t.true(matches({ namespace: 'shop', labels: { app: 'web' } }, web));
  t.false(matches({ namespace: 'shop', labels: { app: 'web', tier: 'back' } }, web));
  t.false(matches({ serviceAccount: 'db' }, web));
  t.true(matches({ spiffeId: 'spiffe://td/ns/shop/sa/*' }, db));
});

test('reserved peers: an empty selector matches them, a reserved one only its own, a workload field never', (t) => {
  const world = { reserved: 'world' } as const;
  t.true(matches({}, world), '"from anywhere"');
  t.true(matches({ labels: {} }, world), 'no labels is no condition');
  t.true(matches({ reserved: 'world' }, world));
  t.false(matches({ reserved: 'host' }, world));
  t.false(matches({ namespace: 'shop' }, world));
  t.false(matches({ spiffeId: 'spiffe://**' }, world));
  t.false(matches({ reserved: 'world' }, web), 'a reserved selector never matches a workload');
  t.is(decide([{ name: 'r', source: {}, destination: { namespace: 'shop' }, mode: 'required' }], world, web, 'disabled'), 'required');
});

test('decisions: disabled wins, then required, then the default; rule order never matters', (t) => {
  const requireShop: PolicyRule = { name: 'r', source: { namespace: 'shop' }, destination: { namespace: 'shop' }, mode: 'required' };
  const exemptDb: PolicyRule = { name: 'd', source: {}, destination: { serviceAccount: 'db' }, mode: 'disabled' };
  t.is(decide([], web, db, 'disabled'), 'disabled');
  t.is(decide([], web, db, 'required'), 'required');
  t.is(decide([requireShop], web, db, 'disabled'), 'required');
  t.is(decide([requireShop, exemptDb], web, db, 'required'), 'disabled');
  t.is(decide([exemptDb, requireShop], web, db, 'required'), 'disabled');
  t.is(decide([requireShop, exemptDb], db, web, 'disabled'), 'required', 'the exemption is directional');
});
