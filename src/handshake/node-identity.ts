import { SpiffeId } from '../identity/spiffe-id.js';

/** How node names and node SPIFFE IDs map onto each other, in both directions. */
export interface NodeIdentityScheme {
  /** The SPIFFE ID a node of this name presents in node handshakes. */
  idFor(nodeName: string): SpiffeId;
  /** The node name a SPIFFE ID stands for, or undefined if it is no node identity. */
  nodeNameOf(id: SpiffeId): string | undefined;
}

const NODE_PATH_PREFIX = '/meshauth/node/';

/** The default scheme, spiffe://<trust domain>/meshauth/node/<node name>, for one trust domain:
 *  a node identity of any other trust domain is not a node this cluster knows. */
export function defaultNodeIdentityScheme(trustDomain: string): NodeIdentityScheme {
  return {
    idFor: (nodeName) => SpiffeId.parse(`spiffe://${trustDomain}${NODE_PATH_PREFIX}${nodeName}`),
    nodeNameOf: (id) => {
      if (id.trustDomain !== trustDomain || !id.path.startsWith(NODE_PATH_PREFIX)) return undefined;
      const name = id.path.slice(NODE_PATH_PREFIX.length);
      return name.length > 0 && !name.includes('/') ? name : undefined;
    },
  };
}
