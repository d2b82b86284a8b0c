// What the initiator and the responder are both built from.
import type { Logger } from '../util/logger.js';
import type { NodeFrame } from './frames.js';
import type { HandshakeOptions } from './handshake-options.js';
import type { HandshakeMetrics } from './handshake-metrics.js';
import type { LocalIdentities } from './local-identities.js';
import type { NodeIdentityScheme } from './node-identity.js';
import type { PeerValidator } from './peer-validator.js';
import type { AuthSink } from './types.js';

export interface HandshakeRoleOptions {
  identities: LocalIdentities;
  validator: PeerValidator;
  nodeIds: NodeIdentityScheme;
  /** This node's frame for a node handshake with the named peer (it may allocate per-peer values, such as IPsec SPIs). */
  localNodeFrame: (peerNode: string) => NodeFrame;
  onAuthenticated: AuthSink;
  settings: HandshakeOptions;
  logger: Logger;
  metrics?: HandshakeMetrics;
  now?: () => Date;
}
