"""The coprocessor's signer: signs the verdicts its tx sender sends to InputVerification.

A separate key from the tx sender's (FHE_SIGNER_PRIVATE_KEY): the host chain's
InputVerifier trusts signatures of registered signers, so the signer key is what makes
an input usable on the host chain, while the tx sender key only pays gas. Only the
process that sends verdicts holds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from ..errors import ConfigError
from ..settings import Settings
from .eip712 import InputVerificationDomain, ciphertext_verification, sign_ciphertext_verification


@dataclass(frozen=True)
class VerdictSigner:
    account: LocalAccount
    domain: InputVerificationDomain

    @classmethod
    def from_settings(cls, settings: Settings, gateway_chain_id: int) -> VerdictSigner | None:
        """None when no signer key is set (this process then sends no verdicts)."""
        if settings.signer_private_key is None:
            return None
        if settings.gateway_input_verification_address is None:
            raise ConfigError(
                "setting FHE_GATEWAY_INPUT_VERIFICATION_ADDRESS is not set: verdicts are "
                "signed for the gateway's InputVerification contract"
            )
        return cls(
            Account.from_key(settings.signer_private_key.get_secret_value()),
            InputVerificationDomain(gateway_chain_id, settings.gateway_input_verification_address),
        )

    @property
    def address(self) -> str:
        return self.account.address

    def sign(
        self,
        handles: Sequence[bytes],
        user: bytes,
        contract: bytes,
        contract_chain_id: int,
        extra_data: bytes,
    ) -> bytes:
        message = ciphertext_verification(
            handles,
            Web3.to_checksum_address(user),
            Web3.to_checksum_address(contract),
            contract_chain_id,
            extra_data,
        )
        return sign_ciphertext_verification(self.account, self.domain, message)
